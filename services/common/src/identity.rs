//! Who is calling: the identity the gateway verified (a JWT's subject and role), passed to
//! the backends in request metadata, and the rules every backend applies with it.
//!
//! The gateway removes every `x-parking-*` header a client sends and sets its own after it
//! has checked the token, so nobody reaches a backend through the gateway with an identity
//! they were not given. A call without these headers comes from inside the mesh (ParkingLot
//! cancelling a delivery, a test, an operator on the pod network): in Kubernetes, Istio's
//! AuthorizationPolicy (k8s/istio/) lets only the gateway and the sibling services reach a
//! backend at all.

use tonic::metadata::MetadataMap;
use tonic::Status;

/// Metadata key carrying the verified token subject (an employee's member id).
pub const SUBJECT: &str = "x-parking-subject";
/// Metadata key carrying the verified role.
pub const ROLE: &str = "x-parking-role";
/// Every identity header starts with this; the gateway drops all of them from callers.
pub const PREFIX: &str = "x-parking-";

/// What a person may do. Ordered for the rules that need "at least" (ShipTicket: manager
/// or admin). Acting for a member is the exception: employees for themselves, admins for
/// anyone, managers look but do not act (see [`Caller::may_act_for`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Applies for, cancels and sees their own reservations only.
    Employee,
    /// Sees every reservation, works the delivery list, ships tickets.
    Manager,
    /// Everything, including the lot's daily capacity.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Employee => "employee",
            Role::Manager => "manager",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "employee" => Ok(Role::Employee),
            "manager" => Ok(Role::Manager),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: employee, manager or admin"
            )),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `name` may be a login, client id or token subject: 1 to 64 of
/// `A-Z a-z 0-9 . _ @ : -` (safe in headers, logs and YAML keys).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_@:".contains(&b))
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No identity headers: a call from inside the mesh.
    Internal,
    /// A person or client the gateway authenticated.
    User { subject: String, role: Role },
}

impl Caller {
    /// Reads the identity the gateway set. Headers that are present but unreadable are
    /// refused rather than taken as "internal".
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Caller, Status> {
        let subject = metadata.get(SUBJECT);
        let role = metadata.get(ROLE);
        match (subject, role) {
            (None, None) => Ok(Caller::Internal),
            (Some(subject), Some(role)) => {
                let subject = subject
                    .to_str()
                    .map_err(|_| Status::unauthenticated("unreadable caller identity"))?;
                let role = role
                    .to_str()
                    .ok()
                    .and_then(|r| r.parse().ok())
                    .ok_or_else(|| Status::unauthenticated("unreadable caller role"))?;
                Ok(Caller::User {
                    subject: subject.to_owned(),
                    role,
                })
            }
            _ => Err(Status::unauthenticated("incomplete caller identity")),
        }
    }

    /// The identity as metadata, for the gateway to set. Fails closed: a subject that
    /// cannot travel as a header is refused, never sent as no identity (= internal).
    pub fn insert_into(&self, metadata: &mut http::HeaderMap) -> Result<(), Status> {
        match self {
            Caller::Internal => Err(Status::unauthenticated("no caller identity to pass on")),
            Caller::User { subject, role } => {
                let value = http::HeaderValue::from_str(subject)
                    .ok()
                    .filter(|_| valid_name(subject))
                    .ok_or_else(|| Status::unauthenticated("unusable token subject"))?;
                metadata.insert(SUBJECT, value);
                metadata.insert(ROLE, http::HeaderValue::from_static(role.as_str()));
                Ok(())
            }
        }
    }

    fn role(&self) -> Role {
        match self {
            Caller::Internal => Role::Admin,
            Caller::User { role, .. } => *role,
        }
    }

    /// The member an employee is (their login, a member id written plainly: "3117", not
    /// "+3117" or "03117"); `None` for everybody else.
    fn own_member(&self) -> Result<Option<i64>, Status> {
        match self {
            Caller::User {
                subject,
                role: Role::Employee,
            } => canonical_member(subject).map(Some).ok_or_else(|| {
                Status::permission_denied(format!(
                    "employee {subject:?} has no member id: an employee's login is their member id"
                ))
            }),
            _ => Ok(None),
        }
    }

    /// Refuses a caller below `role`; `action` names what was refused.
    pub fn require(&self, role: Role, action: &str) -> Result<(), Status> {
        if self.role() >= role {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{action} needs the {role} role; you are {}",
                self.role()
            )))
        }
    }

    /// May this caller see member `member_id`'s reservations? Employees see their own.
    pub fn may_see(&self, member_id: i64) -> Result<(), Status> {
        match self.own_member()? {
            None => Ok(()),
            Some(own) if own == member_id => Ok(()),
            Some(_) => Err(Status::permission_denied(
                "an employee sees their own reservations only",
            )),
        }
    }

    /// May this caller apply or cancel for member `member_id`? Employees act for
    /// themselves, admins for anyone; managers look but do not act for others.
    pub fn may_act_for(&self, member_id: i64) -> Result<(), Status> {
        match (self.own_member()?, self.role()) {
            (Some(own), _) if own == member_id => Ok(()),
            (Some(_), _) => Err(Status::permission_denied(
                "an employee applies for and cancels their own reservations only",
            )),
            (None, Role::Admin) => Ok(()),
            (None, _) => Err(Status::permission_denied(
                "applying or cancelling for a member needs that member's login or the admin role",
            )),
        }
    }

    /// The member a list is narrowed to: an employee's own whatever they asked for (0
    /// meaning "all" becomes "mine"), anyone else's request as it came.
    pub fn list_scope(&self, requested: i64) -> Result<i64, Status> {
        match self.own_member()? {
            None => Ok(requested),
            Some(own) => {
                if requested == 0 || requested == own {
                    Ok(own)
                } else {
                    Err(Status::permission_denied(
                        "an employee sees their own reservations only",
                    ))
                }
            }
        }
    }
}

/// A member id as an employee's login: digits only, no sign, no leading zero.
fn canonical_member(subject: &str) -> Option<i64> {
    let id = subject.parse::<i64>().ok()?;
    (id > 0 && id.to_string() == subject).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(subject: &str, role: Role) -> Caller {
        Caller::User {
            subject: subject.into(),
            role,
        }
    }

    fn code(r: Result<impl std::fmt::Debug, Status>) -> tonic::Code {
        r.err().map(|s| s.code()).unwrap_or(tonic::Code::Ok)
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Employee < Role::Manager && Role::Manager < Role::Admin);
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn employees_act_and_see_their_own_only() {
        let e = user("3117", Role::Employee);
        assert_eq!(code(e.may_act_for(3117)), tonic::Code::Ok);
        assert_eq!(code(e.may_act_for(6)), tonic::Code::PermissionDenied);
        assert_eq!(code(e.may_see(6)), tonic::Code::PermissionDenied);
        assert_eq!(e.list_scope(0).ok(), Some(3117));
        assert_eq!(code(e.list_scope(6)), tonic::Code::PermissionDenied);
        assert_eq!(
            code(e.require(Role::Manager, "x")),
            tonic::Code::PermissionDenied
        );
        let bad = user("alice", Role::Employee);
        assert_eq!(code(bad.may_see(1)), tonic::Code::PermissionDenied);
        for odd in ["+3117", "03117", "-3117"] {
            assert_eq!(
                code(user(odd, Role::Employee).may_see(3117)),
                tonic::Code::PermissionDenied
            );
        }
    }

    #[test]
    fn managers_see_all_but_act_for_nobody_and_admins_do_all() {
        let m = user("boss", Role::Manager);
        assert_eq!(code(m.may_see(6)), tonic::Code::Ok);
        assert_eq!(m.list_scope(0).ok(), Some(0));
        assert_eq!(code(m.may_act_for(6)), tonic::Code::PermissionDenied);
        assert_eq!(code(m.require(Role::Manager, "x")), tonic::Code::Ok);
        assert_eq!(
            code(m.require(Role::Admin, "x")),
            tonic::Code::PermissionDenied
        );
        let a = user("root", Role::Admin);
        assert_eq!(code(a.may_act_for(6)), tonic::Code::Ok);
        assert_eq!(
            code(Caller::Internal.require(Role::Admin, "x")),
            tonic::Code::Ok
        );
    }

    #[test]
    fn metadata_round_trip_and_half_identities_are_refused() {
        let mut headers = http::HeaderMap::new();
        user("3117", Role::Employee)
            .insert_into(&mut headers)
            .expect("a plain subject");
        assert!(user("josé", Role::Admin)
            .insert_into(&mut http::HeaderMap::new())
            .is_err());
        assert!(Caller::Internal
            .insert_into(&mut http::HeaderMap::new())
            .is_err());
        assert!(!valid_name("") && !valid_name("a b") && valid_name("client:ops-bot"));
        let md = MetadataMap::from_headers(headers);
        assert_eq!(
            Caller::from_metadata(&md).ok(),
            Some(user("3117", Role::Employee))
        );
        let mut half = MetadataMap::new();
        half.insert(SUBJECT, "3117".parse().expect("ascii"));
        assert_eq!(
            code(Caller::from_metadata(&half)),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            Caller::from_metadata(&MetadataMap::new()).ok(),
            Some(Caller::Internal)
        );
    }
}
