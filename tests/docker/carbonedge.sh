#!/bin/sh
exec python3 -m carbonedge.cli "$@"
