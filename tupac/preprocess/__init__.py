"""Image preprocessing stages: tissue extraction, stain standardization, candidate nuclei.

Pure functions on numpy arrays; import the stage you need from its module.
"""
