"""System plumbing, each piece written once: network namespaces
(:mod:`~devmemtcp.host.netns`), interfaces, addresses and routes
(:mod:`~devmemtcp.host.ifaces`), process liveness
(:mod:`~devmemtcp.host.procs`), private state files and locks
(:mod:`~devmemtcp.host.files`).

Imports only the ground floor (abi, errors, types), pyroute2 and the
standard library.
"""
