"""bonect: synthetic CT from head-and-neck bone MR, as a DICOM node."""

__version__ = "0.1.0"
