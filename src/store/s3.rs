//! S3 storage: being written (issue 3).
