"""Deploying kit: the runtime image (:mod:`kit.deploy.image`) and, later, the cloud targets.

Each deploy is planned as data before anything is called, so ``--dry-run`` is just the plan.
"""
