//! wimse-reqwest's integration tests, one module per subject, in one binary (one link instead
//! of one per file).

mod assertion;
mod key_check;
mod middleware;
mod settings;
