"""CuPy GPU kernels: CUDA C sources in ``kernels/`` compiled at first use (see ``_rawmodule``)."""
