//! The inbound gRPC adapter: `parking.v1.TicketReservationService`.

use crate::domain::{Application, ReservationState};
use crate::store::{Cancelled, Reserved, Store, TicketReservation};
use parking_common::calendar::{format_day, Calendar};
use parking_common::grpc::{db_status, positive_id};
use parking_common::identity::Caller;
use parking_common::observe::correlate;
use parking_common::paging::Page;
use parking_common::pb;
use tonic::{Request, Response, Status};

/// Serves TicketReservationService over a [`Store`].
pub struct Api {
    pub store: Store,
    pub calendar: Calendar,
}

fn to_pb(r: TicketReservation) -> pb::TicketReservation {
    let state = match r.state {
        ReservationState::Requested => pb::ReservationState::Requested,
        ReservationState::Confirmed => pb::ReservationState::Confirmed,
        ReservationState::Rejected => pb::ReservationState::Rejected,
        ReservationState::Canceled => pb::ReservationState::Canceled,
    };
    pb::TicketReservation {
        id: r.id,
        member_id: r.member_id,
        reservation_date: format_day(r.date),
        state: state.into(),
        // The key of a call the client gave none for is ours, not theirs to see.
        request_id: r
            .request_id
            .filter(|id| !id.starts_with(CALL_KEY))
            .unwrap_or_default(),
    }
}

/// Prefix of the idempotency key taken from the gateway's request id.
const CALL_KEY: &str = "call:";

#[tonic::async_trait]
impl pb::ticket_reservation_service_server::TicketReservationService for Api {
    async fn reserve_ticket(
        &self,
        request: Request<pb::ReserveTicketRequest>,
    ) -> Result<Response<pb::TicketReservation>, Status> {
        let caller = Caller::of(&request)?;
        // Without a request_id of the client's, the gateway's id of this call: a retry of
        // it by the mesh (the first try committed, its answer was lost) returns the first
        // result instead of "already holds a ticket".
        let retry_key = request
            .metadata()
            .get(parking_common::propagation::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(|id| format!("{CALL_KEY}{id}"));
        let req = request.into_inner();
        caller.may_act_for(req.member_id)?;
        let date = self
            .calendar
            .bookable_day("reservation_date", &req.reservation_date)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut app = Application::new(req.member_id, date, &req.request_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if app.request_id.is_none() {
            app.request_id = retry_key
                .and_then(|key| Application::new(req.member_id, date, &key).ok())
                .and_then(|keyed| keyed.request_id);
        }
        match self.store.reserve(&app).await.map_err(|e| db_status("ReserveTicket", e))? {
            Reserved::New(r) => {
                correlate(r.id);
                tracing::info!(reservation_id = r.id, member_id = r.member_id, date = %r.date, "ticket reserved");
                Ok(Response::new(to_pb(r)))
            }
            Reserved::Replayed(r) => {
                correlate(r.id);
                Ok(Response::new(to_pb(r)))
            }
            Reserved::RequestIdReused(first) => Err(Status::already_exists(format!(
                "request_id {:?} was already used for reservation {} on {}; use a new request_id for a new application",
                first.request_id.unwrap_or_default(),
                first.id,
                first.date
            ))),
            Reserved::MemberHoldsDay => Err(Status::already_exists(format!(
                "member {} already holds a ticket application for {}; a member holds one ticket per day",
                app.member_id, app.date
            ))),
        }
    }

    async fn cancel_reservation(
        &self,
        request: Request<pb::CancelReservationRequest>,
    ) -> Result<Response<pb::TicketReservation>, Status> {
        let caller = Caller::of(&request)?;
        let id = positive_id("id", request.into_inner().id)?;
        correlate(id);
        // A reservation's member never changes, so checking before the cancel is safe.
        match self
            .store
            .get(id)
            .await
            .map_err(|e| db_status("CancelReservation", e))?
        {
            Some(r) => caller.may_act_for(r.member_id)?,
            None => return Err(Status::not_found(format!("no reservation with id {id}"))),
        }
        match self
            .store
            .cancel(id)
            .await
            .map_err(|e| db_status("CancelReservation", e))?
        {
            Cancelled::Now(r) => {
                tracing::info!(reservation_id = id, "reservation canceled");
                Ok(Response::new(to_pb(TicketReservation {
                    state: ReservationState::Canceled,
                    ..r
                })))
            }
            Cancelled::AlreadyCanceled => Err(Status::failed_precondition(format!(
                "reservation {id} is already canceled"
            ))),
            Cancelled::NotFound => Err(Status::not_found(format!("no reservation with id {id}"))),
        }
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::TicketReservation>, Status> {
        let caller = Caller::of(&request)?;
        let id = positive_id("id", request.into_inner().id)?;
        match self
            .store
            .get(id)
            .await
            .map_err(|e| db_status("GetReservation", e))?
        {
            Some(r) => {
                caller.may_see(r.member_id)?;
                Ok(Response::new(to_pb(r)))
            }
            None => Err(Status::not_found(format!("no reservation with id {id}"))),
        }
    }

    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let member = match caller.list_scope(req.member_id)? {
            0 => None,
            id => Some(positive_id("member_id", id)?),
        };
        let page = Page::from_request(req.page_size, &req.page_token)?;
        let rows = self
            .store
            .list(member, page)
            .await
            .map_err(|e| db_status("ListReservations", e))?;
        let next_page_token = page.next_token(rows.len(), rows.last().map(|r| r.id));
        Ok(Response::new(pb::ListReservationsResponse {
            reservations: rows.into_iter().map(to_pb).collect(),
            next_page_token,
        }))
    }
}
