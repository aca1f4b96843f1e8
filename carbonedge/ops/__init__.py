"""Operating a deployment: the cluster's status as read from Redis (what `carbonedge status`
prints and a producer's timeout diagnosis reads), Prometheus metrics, Flower, and the Redis
ACL users per role.

Nothing is imported here: a producer reading the status must not pull in
``prometheus_client`` or Flower.
"""

__all__: list[str] = []
