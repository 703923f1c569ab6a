"""asv benchmark suite of ssmcore (``benchmarks/asv.conf.json`` points here).

Only this package is collected by asv; the side-by-side ``compare_*.py`` scripts one
folder up are run by hand and print tables.
"""
