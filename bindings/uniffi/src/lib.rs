//! uniffi bindings for codexpool (filled by the bindings issue).
