//! The inbound gRPC adapter: `parking.v1.TicketDeliveryService`.

use crate::domain::DeliveryState;
use crate::store::{Shipping, Store, TicketDelivery};
use parking_common::calendar::{format_day, parse_day};
use parking_common::grpc::{db_status, positive_id};
use parking_common::identity::{Caller, Role};
use parking_common::paging::Page;
use parking_common::pb;
use tonic::{Request, Response, Status};

pub struct Api {
    pub store: Store,
}

fn state_to_pb(s: DeliveryState) -> pb::DeliveryState {
    match s {
        DeliveryState::Requested => pb::DeliveryState::DeliveryRequested,
        DeliveryState::Shipped => pb::DeliveryState::DeliveryShipped,
        DeliveryState::Canceled => pb::DeliveryState::DeliveryCanceled,
    }
}

fn to_pb(d: TicketDelivery) -> pb::TicketDelivery {
    pb::TicketDelivery {
        id: d.id,
        reservation_id: d.reservation_id,
        member_id: d.member_id,
        reservation_date: d.reservation_date,
        space_number: d.space_number,
        state: state_to_pb(d.state).into(),
    }
}

#[tonic::async_trait]
impl pb::ticket_delivery_service_server::TicketDeliveryService for Api {
    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        Caller::of(&request)?.require(Role::Manager, "the delivery list")?;
        let req = request.into_inner();
        let date = if req.reservation_date.is_empty() {
            None
        } else {
            Some(format_day(
                parse_day("reservation_date", &req.reservation_date)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            ))
        };
        let state = match pb::DeliveryState::try_from(req.state) {
            Ok(pb::DeliveryState::Unspecified) => None,
            Ok(pb::DeliveryState::DeliveryRequested) => Some(DeliveryState::Requested),
            Ok(pb::DeliveryState::DeliveryShipped) => Some(DeliveryState::Shipped),
            Ok(pb::DeliveryState::DeliveryCanceled) => Some(DeliveryState::Canceled),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "state {} is not a DeliveryState",
                    req.state
                )))
            }
        };
        let page = Page::from_request(req.page_size, &req.page_token)?;
        let rows = self
            .store
            .list(date.as_deref(), state, page)
            .await
            .map_err(|e| db_status("ListDeliveries", e))?;
        let next_page_token = page.next_token(rows.len(), rows.last().map(|d| d.id));
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries: rows.into_iter().map(to_pb).collect(),
            next_page_token,
        }))
    }

    async fn ship_ticket(
        &self,
        request: Request<pb::ShipTicketRequest>,
    ) -> Result<Response<pb::TicketDelivery>, Status> {
        Caller::of(&request)?.require(Role::Manager, "ShipTicket")?;
        let id = positive_id("delivery_id", request.into_inner().delivery_id)?;
        match self
            .store
            .ship(id)
            .await
            .map_err(|e| db_status("ShipTicket", e))?
        {
            Shipping::Done(d) => {
                parking_common::observe::correlate(d.reservation_id);
                Ok(Response::new(to_pb(d)))
            }
            Shipping::Refused(d) => Err(Status::failed_precondition(format!(
                "delivery {id} was cancelled (reservation {}); there is no ticket to ship",
                d.reservation_id
            ))),
            Shipping::NotFound => Err(Status::not_found(format!("no delivery with id {id}"))),
        }
    }

    async fn cancel_delivery(
        &self,
        request: Request<pb::CancelDeliveryRequest>,
    ) -> Result<Response<pb::TicketDelivery>, Status> {
        // The cancel saga's compensation: parking-lot's service identity, or an admin by hand.
        Caller::of_any(&request)?.require_any(&[Role::Service, Role::Admin], "CancelDelivery")?;
        let id = positive_id("reservation_id", request.into_inner().reservation_id)?;
        let d = self
            .store
            .cancel(id)
            .await
            .map_err(|e| db_status("CancelDelivery", e))?;
        Ok(Response::new(to_pb(d)))
    }
}
