"""Device profiles (``devices/profiles/*.yaml``) and the device agent (``devices.agent``).

Imports neither torch nor anything of the fleet; installs with ``pip install edgekit[agent]``.
"""
