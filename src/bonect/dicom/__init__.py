"""DICOM building blocks shared by every part: UIDs, files, modules, geometry, instance headers."""
