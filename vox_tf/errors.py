"""The one error type a user sees for bad input files."""


class MeshError(ValueError):
    """A mesh (or voxel) file that cannot be used, with the file and the reason.

    The message always reads ``"<file>: <reason>"`` so command-line tools can print
    ``error: <file>: <reason>`` unchanged.
    """

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
