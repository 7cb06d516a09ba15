"""basecli loom: a tree of continuations (tree, store, actions, weave), its text views and the full-screen app."""
