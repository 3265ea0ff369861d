"""The ``fedpkt`` command line: the top layer (cli -> sim -> server, clients -> fedpkt).

Thin by design: each module parses one command group's flags, calls the library or a runner,
and prints. Any FedpktError becomes one line on stderr and exit code 2.
"""
