//! Why an upgrade stopped short: one variant per documented exit class, and
//! the one place that maps them to exit codes.

use crate::exit;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// Bad input (an extra that is not a PEP 508 name, …); nothing was touched.
    #[error("{0}")]
    Usage(String),
    /// Refused before anything changed.
    #[error("{0}")]
    Refused(String),
    /// Failed after something changed (a stop failed).
    #[error("{0}")]
    Partial(String),
    /// uv or the staged release failed (nothing stopped), or the switch
    /// failed and was rolled back.
    #[error("{0}")]
    Install(String),
    /// Installed, but old code still runs.
    #[error("{0}")]
    Verify(String),
    /// Interrupted before anything changed.
    #[error("{0}")]
    Interrupted(String),
}

impl UpgradeError {
    pub fn exit_code(&self) -> u8 {
        match self {
            UpgradeError::Usage(_) => exit::USAGE,
            UpgradeError::Refused(_) => exit::REFUSED,
            UpgradeError::Partial(_) => exit::PARTIAL,
            UpgradeError::Install(_) => exit::INSTALL_FAILED,
            UpgradeError::Verify(_) => exit::VERIFY_FAILED,
            UpgradeError::Interrupted(_) => exit::INTERRUPTED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_its_documented_code() {
        let all = [
            (UpgradeError::Usage("u".into()), 2),
            (UpgradeError::Refused("r".into()), 3),
            (UpgradeError::Partial("p".into()), 4),
            (UpgradeError::Install("i".into()), 5),
            (UpgradeError::Verify("v".into()), 6),
            (UpgradeError::Interrupted("x".into()), 130),
        ];
        for (e, code) in all {
            assert_eq!(e.exit_code(), code, "{e:?}");
            assert!(
                exit::TABLE.contains(&format!("  {code}  ")),
                "{code} undocumented"
            );
        }
    }
}
