//! Proptest settings and strategies shared by the property targets.

use proptest::prelude::*;
use vesim::quirks::Profile;

/// `cases` cases, no failure persistence.
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Either quirk profile.
pub fn profile() -> impl Strategy<Value = Profile> {
    prop_oneof![Just(Profile::Fixed), Just(Profile::Hvmi)]
}
