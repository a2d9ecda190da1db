//! Typed errors for objects that cannot be represented in the model.

/// Why a Kubernetes object was rejected at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A required field is absent.
    #[error("{object}: missing field `{field}`")]
    MissingField {
        /// The object (kind/namespace/name) the field belongs to.
        object: String,
        /// The JSON path of the field.
        field: &'static str,
    },
    /// An IP address does not parse.
    #[error("{object}: bad IP address {value:?} in `{field}`")]
    BadIp {
        /// The object the address belongs to.
        object: String,
        /// The JSON path of the field.
        field: &'static str,
        /// The text that did not parse.
        value: String,
    },
    /// A protocol other than TCP, UDP or SCTP.
    #[error("{object}: unknown protocol {value:?}")]
    UnknownProtocol {
        /// The object the port belongs to.
        object: String,
        /// The protocol text.
        value: String,
    },
    /// A name or label that breaks the Kubernetes naming rules.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// What kind of name (Service name, label key, ...).
        what: &'static str,
        /// The offending value (truncated to 80 characters).
        value: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A port number outside 1..=65535.
    #[error("{object}: port {value} out of range in `{field}`")]
    BadPort {
        /// The object the port belongs to.
        object: String,
        /// The JSON path of the field.
        field: &'static str,
        /// The number given.
        value: i64,
    },
    /// A field holds a value the model does not know.
    #[error("{object}: unsupported value {value:?} in `{field}`")]
    Unsupported {
        /// The object.
        object: String,
        /// The JSON path of the field.
        field: &'static str,
        /// The value.
        value: String,
    },
}

impl Error {
    /// True when the error is about a name or a label.
    pub fn is_invalid_name(&self) -> bool {
        matches!(self, Error::InvalidName { .. })
    }
    /// True when the error is about an IP address.
    pub fn is_bad_ip(&self) -> bool {
        matches!(self, Error::BadIp { .. })
    }
}

/// Result with the model's conversion error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
