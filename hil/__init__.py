"""Hardware-in-the-loop checks, the fleet simulator and benchmarks: measure a bundle on its real target.

* ``edgekit hil run`` (:mod:`hil.run`, :mod:`hil.targets`, :mod:`hil.probe`, :mod:`hil.verdict`): copy a
  bundle and a self-contained probe to ``local`` or ``ssh://user@host:port``, run it there on the
  profile's runtime, and judge latency, throughput, memory and accuracy against the manifest's budgets.
* ``edgekit hil simulate`` (:mod:`hil.simulator`, :mod:`hil.simdevice`, :mod:`hil.simota`,
  :mod:`hil.simscript`, :mod:`hil.mqttio`): N simulated device agents on one asyncio loop, speaking the
  real MQTT protocol and OTA sequence, with scripted behaviour. :mod:`hil.collector` counts loss per seq.
* Benchmarks: each ``hil/bench_*.py`` module has a ``main()`` that measures one claim in a single run
  (ratios against baselines measured in the same run, because this kind of machine is shared and noisy)
  and writes ``bench/<name>.json`` + ``bench/<name>.md``. ``python -m hil.bench_all`` runs them all.
* :mod:`hil.broker`: a private (optionally crash-persistent) mosquitto for benchmarks and chaos runs.
"""
