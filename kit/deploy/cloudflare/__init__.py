"""``kit deploy --target cloudflare``: a deployment's shape and its wrangler config
(:mod:`.target`), planned as data (:mod:`.plan`), then carried out by wrangler
(:mod:`.wrangler`, :mod:`.apply`). See docs/deploy-cloudflare.md."""
