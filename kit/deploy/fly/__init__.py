"""``kit deploy --target fly``: a deployment's shape (:mod:`.target`), planned as data
(:mod:`.plan`) before anything is called. See docs/deploy-fly.md."""
