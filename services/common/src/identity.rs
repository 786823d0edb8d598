//! Who is calling: the subject and role of a token a server verified (see [`crate::auth`]),
//! and the rules every backend applies with them. There is no caller without a token:
//! a call that reaches a handler was verified by [`crate::auth::AuthLayer`].

use tonic::Status;

/// What a caller may do. People's roles are ranked for the rules that need "at least"
/// (ShipTicket: manager or admin); acting for a member is the exception: employees for
/// themselves, admins for anyone, managers look but do not act (see
/// [`Caller::may_act_for`]). A service is outside the ranking: it may make exactly the
/// calls that name it ([`Caller::require_any`]), nothing a person's role allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Applies for, cancels and sees their own reservations only.
    Employee,
    /// Sees every reservation, works the delivery list, ships tickets.
    Manager,
    /// Everything, including the lot's daily capacity.
    Admin,
    /// A service of the system calling another on its own behalf (parking-lot's
    /// CancelDelivery): only the calls that list it.
    Service,
    /// A local resident using the community service's evening spaces. Outside the
    /// company's ranking: may read the lot's daily figures, never a member's reservations.
    Resident,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Employee => "employee",
            Role::Manager => "manager",
            Role::Admin => "admin",
            Role::Service => "service",
            Role::Resident => "resident",
        }
    }

    /// Rank among the company's people; `None` for a service or a resident.
    fn rank(self) -> Option<u8> {
        match self {
            Role::Employee => Some(1),
            Role::Manager => Some(2),
            Role::Admin => Some(3),
            Role::Service | Role::Resident => None,
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
            "service" => Ok(Role::Service),
            "resident" => Ok(Role::Resident),
            other => Err(format!(
                "unknown role {other:?}: employee, manager, admin, service or resident"
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

/// The verified caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// A user's login (an employee's member id) or `client:<id>` for a program.
    pub subject: String,
    pub role: Role,
}

impl Caller {
    /// The person [`crate::auth::AuthLayer`] verified for this request. A service is
    /// refused here, so a call is for people unless its handler says otherwise with
    /// [`Caller::of_any`]. Fails closed: a server without the layer has no caller, never
    /// an all-powerful one.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
        let caller = Caller::of_any(request)?;
        caller.refuse_service()?;
        Ok(caller)
    }

    /// The verified caller, a service included: for the calls that name services.
    pub fn of_any<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no verified caller for this call"))
    }

    /// The member an employee is (their login, a member id written plainly: "3117", not
    /// "+3117" or "03117"); `None` for everybody else.
    fn own_member(&self) -> Result<Option<i64>, Status> {
        match self.role {
            Role::Employee => canonical_member(&self.subject).map(Some).ok_or_else(|| {
                Status::permission_denied(format!(
                    "employee {:?} has no member id: an employee's login is their member id",
                    self.subject
                ))
            }),
            _ => Ok(None),
        }
    }

    /// Refuses a caller below `role` (a service is below every person's role);
    /// `action` names what was refused.
    pub fn require(&self, role: Role, action: &str) -> Result<(), Status> {
        let enough = match (self.role.rank(), role.rank()) {
            (Some(mine), Some(needed)) => mine >= needed,
            _ => self.role == role,
        };
        if enough {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{action} needs the {role} role; you are {}",
                self.role
            )))
        }
    }

    /// Refuses a caller with none of `roles` (at least one of them, for people's roles).
    pub fn require_any(&self, roles: &[Role], action: &str) -> Result<(), Status> {
        if roles.iter().any(|r| self.require(*r, action).is_ok()) {
            return Ok(());
        }
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(Status::permission_denied(format!(
            "{action} needs one of the roles {}; you are {}",
            names.join(", "),
            self.role
        )))
    }

    /// Services act for no member and read no member's reservations.
    fn refuse_service(&self) -> Result<(), Status> {
        if self.role == Role::Service {
            return Err(Status::permission_denied(format!(
                "{} is a service: it may not read or act on members' reservations",
                self.subject
            )));
        }
        Ok(())
    }

    /// Members' reservations are the company's people's business: services and residents
    /// neither read nor act on them.
    fn refuse_outsider(&self) -> Result<(), Status> {
        self.refuse_service()?;
        if self.role == Role::Resident {
            return Err(Status::permission_denied(format!(
                "{} is a resident: members' reservations are for the company's people",
                self.subject
            )));
        }
        Ok(())
    }

    /// May this caller see member `member_id`'s reservations? Employees see their own.
    pub fn may_see(&self, member_id: i64) -> Result<(), Status> {
        self.refuse_outsider()?;
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
        self.refuse_outsider()?;
        match (self.own_member()?, self.role) {
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
        self.refuse_outsider()?;
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
        Caller {
            subject: subject.into(),
            role,
        }
    }

    fn code(r: Result<impl std::fmt::Debug, Status>) -> tonic::Code {
        r.err().map(|s| s.code()).unwrap_or(tonic::Code::Ok)
    }

    #[test]
    fn roles_are_ranked_and_a_service_is_outside_the_ranking() {
        let a = user("root", Role::Admin);
        let s = user("client:parking-lot", Role::Service);
        assert_eq!(code(a.require(Role::Manager, "x")), tonic::Code::Ok);
        assert_eq!(
            code(a.require(Role::Service, "x")),
            tonic::Code::PermissionDenied
        );
        for role in [Role::Employee, Role::Manager, Role::Admin] {
            assert_eq!(code(s.require(role, "x")), tonic::Code::PermissionDenied);
        }
        assert_eq!(code(s.require(Role::Service, "x")), tonic::Code::Ok);
        let either = [Role::Admin, Role::Service];
        assert_eq!(code(s.require_any(&either, "x")), tonic::Code::Ok);
        assert_eq!(code(a.require_any(&either, "x")), tonic::Code::Ok);
        assert_eq!(
            code(user("boss", Role::Manager).require_any(&either, "x")),
            tonic::Code::PermissionDenied
        );
        assert_eq!("service".parse::<Role>(), Ok(Role::Service));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn a_service_neither_reads_nor_acts_on_reservations() {
        let s = user("client:parking-lot", Role::Service);
        assert_eq!(code(s.may_see(6)), tonic::Code::PermissionDenied);
        assert_eq!(code(s.may_act_for(6)), tonic::Code::PermissionDenied);
        assert_eq!(code(s.list_scope(0)), tonic::Code::PermissionDenied);
    }

    #[test]
    fn a_resident_reads_the_lot_but_no_reservation() {
        let r = user("rosa", Role::Resident);
        assert_eq!(code(r.may_see(6)), tonic::Code::PermissionDenied);
        assert_eq!(code(r.may_act_for(6)), tonic::Code::PermissionDenied);
        assert_eq!(code(r.list_scope(0)), tonic::Code::PermissionDenied);
        for role in [Role::Employee, Role::Manager, Role::Admin, Role::Service] {
            assert_eq!(code(r.require(role, "x")), tonic::Code::PermissionDenied);
        }
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(r.clone());
        assert_eq!(Caller::of(&request).ok(), Some(r));
        assert_eq!("resident".parse::<Role>(), Ok(Role::Resident));
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
    }

    #[test]
    fn no_verified_caller_is_refused() {
        assert_eq!(
            code(Caller::of(&tonic::Request::new(()))),
            tonic::Code::Unauthenticated
        );
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(user("6", Role::Employee));
        assert_eq!(Caller::of(&request).ok(), Some(user("6", Role::Employee)));
        let mut service = tonic::Request::new(());
        service
            .extensions_mut()
            .insert(user("client:parking-lot", Role::Service));
        assert_eq!(code(Caller::of(&service)), tonic::Code::PermissionDenied);
        assert!(Caller::of_any(&service).is_ok());
        assert!(!valid_name("") && !valid_name("a b") && valid_name("client:ops-bot"));
    }
}
