//! Lifecycle states, typed end to end and stored and served as the API's strings.
use serde::{Deserialize, Serialize};

/// An endpoint service's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ServiceStatus {
    /// Created, not yet checked against its backend.
    Creating,
    Available,
    /// The backend was gone when the service was activated.
    Failed,
    /// The backend NIC went away; it resumes when the NIC is back.
    Suspended,
}

/// An endpoint's (a connection's) state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EndpointStatus {
    PendingAcceptance,
    Creating,
    Accepted,
    Rejected,
    /// Its service was deleted.
    Failed,
    Deleting,
}

macro_rules! strings {
    ($t:ty { $($v:ident = $s:literal),* $(,)? }) => {
        impl $t {
            /// The API's string.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $t {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($s => Ok(Self::$v),)* _ => Err(()) }
            }
        }
    };
}

strings!(ServiceStatus {
    Creating = "creating",
    Available = "available",
    Failed = "failed",
    Suspended = "suspended",
});

strings!(EndpointStatus {
    PendingAcceptance = "pendingAcceptance",
    Creating = "creating",
    Accepted = "accepted",
    Rejected = "rejected",
    Failed = "failed",
    Deleting = "deleting",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialised_as_the_api_strings() {
        for s in [
            ServiceStatus::Creating,
            ServiceStatus::Available,
            ServiceStatus::Failed,
            ServiceStatus::Suspended,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.as_str().parse::<ServiceStatus>(), Ok(s));
        }
        for s in [
            EndpointStatus::PendingAcceptance,
            EndpointStatus::Creating,
            EndpointStatus::Accepted,
            EndpointStatus::Rejected,
            EndpointStatus::Failed,
            EndpointStatus::Deleting,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.as_str().parse::<EndpointStatus>(), Ok(s));
        }
    }
}
