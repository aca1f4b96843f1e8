from __future__ import annotations

import subprocess
import sys

from carbonedge.partitioner.catalog import MODEL_NAMES
from carbonedge.partitioner.models import model_names


def test_torch_free_catalog_matches_the_registry() -> None:
    assert set(model_names()) == MODEL_NAMES


def test_producer_and_dispatcher_do_not_import_torch() -> None:
    code = ("import sys, carbonedge.broker.client, carbonedge.broker.dispatcher; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
