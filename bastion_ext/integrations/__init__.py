"""Drop-ins for serving engines: a ``DraftTree`` and a ``VerifyResult`` in the tensors each
engine's verify path reads and writes, and back (``docs/integration.md``).

``sglang``: SGLang's EAGLE layout (first-child / next-sibling links, three tree-mask modes,
``verify_tree_greedy``'s outputs). ``vllm``: the float32 tree attention bias and output rows
of vLLM's DDTree verify. ``layout``: what both share, the padding rules and the
pointer-doubling helpers that rebuild a tree's fields from an engine's links. Torch ops only,
no engine imported, no host reads: each conversion traces under
``torch.compile(fullgraph=True)``.
"""
