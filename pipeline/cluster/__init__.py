"""Scale-out on Ray Serve: camera ownership by rendezvous hash, a Serve worker per GPU, `vap cluster`.

Importing this package (or `assign`, `registry`, `shard`, `cli`) does not import Ray; only
`pipeline.cluster.worker` (the Serve deployment, loaded by Ray itself) does.
"""
