"""What every layer shares: errors, data types, tensor codecs and the model configuration."""
