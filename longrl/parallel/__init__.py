"""MR-SP: process groups (dp x sp), sharded vision encoding, sequence-parallel prefill and attention."""
