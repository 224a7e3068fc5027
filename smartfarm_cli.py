"""The `smartfarm` console script: `edge …`, `sim …`, `cloud …` and `demo`."""
from __future__ import annotations

import sys

from shared.about import version_line

USAGE = """usage: smartfarm [-h] [-V] {edge,sim,cloud,demo} …

  edge   init a site, add devices, check the config, run the Raspberry Pi edge
  sim    run simulated ESP32 nodes against an edge (smartfarm sim --config edge.toml)
  cloud  the cloud service (serve, migrate, seed-db, create-user, check-config)
  demo   run the whole farm locally: PostgreSQL, cloud dashboard, edge, simulated rooms

options:
  -h, --help     show this help message and exit
  -V, --version  print the installed smartfarm version and exit

`smartfarm COMMAND --help` explains each command and its options.
"""
COMMANDS = ("edge", "sim", "cloud", "demo")
VERSION_FLAGS = ("-V", "--version")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] in VERSION_FLAGS:
        print(version_line())
        return 0
    command, rest = args[0], args[1:]
    if command in ("sim", "demo") and rest[:1] and rest[0] in VERSION_FLAGS:
        print(version_line())  # their parsers (firmware_sim, demo) have no --version of their own
        return 0
    if command == "edge":
        from edge.cli import edge_main

        return edge_main(rest)
    if command == "sim" and rest[:1] == ["node"]:
        # One node with the credentials the cloud showed for a new device.
        from firmware_sim.provision import node_main

        return node_main(rest[1:])
    if command == "sim":
        from edge.config import load_config
        from firmware_sim.farm import sim_main

        return sim_main(rest, load_config)
    if command == "cloud":
        from cloud.cli import cloud_main

        return cloud_main(rest)
    if command == "demo":
        from demo.with_cloud import demo_main

        return demo_main(rest)
    print(f"smartfarm: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
