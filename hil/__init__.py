"""Hardware-in-the-loop checks and benchmarks: measure a bundle on its real target.

Each ``hil/bench_*.py`` module has a ``main()`` that measures one claim in a single run (ratios against
baselines measured in the same run, because this kind of machine is shared and noisy) and writes
``bench/<name>.json`` + ``bench/<name>.md``. ``python -m hil.bench_all`` runs them all.
"""
