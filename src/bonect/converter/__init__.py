"""The converter: bone MR volume in, synthetic CT volume (and DICOM series) out."""
