"""What dispatchers, agents and producers share about moving work: the Celery app (msgpack
only), task messages, result delivery and listening, hand-back of a node's work, the
node allow-list; the one place that knows Celery's and kombu's wire formats."""

from carbonedge.transport.allowlist import check_agent_allowed, node_allowed
from carbonedge.transport.celery_app import make_celery_app
from carbonedge.transport.delivery import deliver
from carbonedge.transport.handback import hand_back, release_previous_life
from carbonedge.transport.listener import ResultListener, decode_meta, result_key
from carbonedge.transport.publish import encode_task_message

__all__ = [
    "ResultListener",
    "check_agent_allowed",
    "decode_meta",
    "deliver",
    "encode_task_message",
    "hand_back",
    "make_celery_app",
    "node_allowed",
    "release_previous_life",
    "result_key",
]
