"""Start-up cost: `import ssmcore` must stay well under 0.5 s and compile nothing."""


def timeraw_import_ssmcore():
    # timeraw_* runs the returned code in a fresh interpreter; the setup imports numpy
    # so that what is measured is ssmcore's own import cost.
    return "import ssmcore", "import numpy"
