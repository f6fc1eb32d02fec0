"""The local cloud: durable objects, sandbox tiers, the Messages API stand-in, the Fly Machines API."""
