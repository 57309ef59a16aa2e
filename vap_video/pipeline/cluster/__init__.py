"""Scale-out on Ray Serve: camera ownership by rendezvous hash over sticky slots, a Serve worker
per GPU, a small ledger in Ray's GCS (slots, heartbeats, owner incarnations), `vap cluster`.

Importing this package (or `placement`, `registry`, `ledger`, `ownership`, `shard`, `status`,
`cli`) does not import Ray; only `vap_video.pipeline.cluster.worker` (the Serve deployment, loaded by Ray
itself) does, and `ledger.GcsKV.connect` loads Ray's GCS client when called.
"""
