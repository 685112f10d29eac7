"""Model repositories in object storage: a bucket (``s3://``, in Triton's syntax) copied to a local
cache folder that the local repository manager (``server/core/repository.py``) serves from.

``location`` parses the URL; ``listing`` holds the rule that keeps partial uploads out (pure,
no I/O); ``s3`` talks to the bucket through boto3; ``mirror`` keeps the cache folder in step."""
