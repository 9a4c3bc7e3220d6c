//! Placeholder: the multi-node testbed (issue #5) is being built.
