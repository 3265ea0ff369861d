"""Persona dialogue data: schema, sources, the paper's split and per-client partitions.

* ``schema``      Fact, Utterance, Dialogue, Persona, Example, ClientData (shared types)
* ``catalogue``   the synthetic corpus's persona facts: slots, values, templates
* ``facts``       extract_facts / nli_relation: the exact C-score oracle
* ``synthetic``   the embedded corpus (tiny/default/paper) and backbone pretraining dialogues
* ``personachat`` real PERSONA-CHAT: ParlAI text files or a Hugging Face dataset
* ``split``       grouping by persona, Parts A/B/C, 8:1:1 per persona
* ``partition``   one folder per client on disk, manifest, load_client
* ``examples``    persona turns with their history window
* ``stats``       Table 1 rows
* ``encoding``    the text layout a causal LM sees

Nothing is imported here, so that ``import fedpkt.data.schema`` stays light and acyclic.
"""
