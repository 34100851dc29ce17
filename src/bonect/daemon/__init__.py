"""The DICOM node: receive, settle, convert, send."""
