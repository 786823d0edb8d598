//! The inbound gRPC adapter: `parking.v1.ReservationStatusService`. Answers from the
//! view only: no joins, no calls to other services.

use crate::domain::{Stage, View};
use crate::store::{Status as StoredStatus, Store};
use parking_common::calendar::{format_day, parse_day};
use parking_common::events::timestamp;
use parking_common::grpc::{db_status, positive_id};
use parking_common::identity::Caller;
use parking_common::paging::Page;
use parking_common::pb;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// How often a watch re-reads the view even without a local change: a replica sharing
/// the database may have projected the event.
const WATCH_POLL: Duration = Duration::from_secs(1);

pub struct Api {
    pub store: Store,
    /// Reservation ids this replica just projected.
    pub changes: broadcast::Sender<crate::policy::Changed>,
    /// Ends open watches when the server stops, so shutdown is not held up by them.
    pub shutdown: CancellationToken,
}

fn stage_to_pb(s: Stage) -> pb::ReservationStage {
    match s {
        Stage::Unspecified => pb::ReservationStage::StageUnspecified,
        Stage::Reserved => pb::ReservationStage::StageReserved,
        Stage::Occupied => pb::ReservationStage::StageOccupied,
        Stage::FullyOccupied => pb::ReservationStage::StageFullyOccupied,
        Stage::DeliveryRequested => pb::ReservationStage::StageDeliveryRequested,
        Stage::Shipped => pb::ReservationStage::StageShipped,
        Stage::CancelRequested => pb::ReservationStage::StageCancelRequested,
        Stage::DeliveryCanceled => pb::ReservationStage::StageDeliveryCanceled,
        Stage::Vacated => pb::ReservationStage::StageVacated,
    }
}

fn view_to_pb(v: View, history: Vec<pb::StatusEvent>) -> pb::ReservationStatus {
    pb::ReservationStatus {
        reservation_id: v.reservation_id,
        member_id: v.member_id,
        reservation_date: v.reservation_date,
        stage: stage_to_pb(v.stage).into(),
        parking_lot_id: v.parking_lot_id,
        ticket_delivery_id: v.ticket_delivery_id,
        history,
        space_number: v.space_number,
    }
}

fn to_pb(s: StoredStatus) -> pb::ReservationStatus {
    let history = s
        .history
        .into_iter()
        .map(|h| pb::StatusEvent {
            event_id: h.event_id,
            event_type: h.event_type,
            stage: stage_to_pb(h.stage).into(),
            occurred_at: Some(timestamp(h.occurred_at)),
        })
        .collect();
    view_to_pb(s.view, history)
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ReservationStatus, Status>> + Send>>;

#[tonic::async_trait]
impl pb::reservation_status_service_server::ReservationStatusService for Api {
    async fn get_reservation_status(
        &self,
        request: Request<pb::GetReservationStatusRequest>,
    ) -> Result<Response<pb::ReservationStatus>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        // `id` is the seed's REST query name (/reservationStatuses/reservationID?id=).
        let id = match (req.reservation_id, req.id) {
            (0, id) => positive_id("id", id)?,
            (id, _) => positive_id("reservation_id", id)?,
        };
        parking_common::observe::correlate(id);
        match self
            .store
            .get(id)
            .await
            .map_err(|e| db_status("GetReservationStatus", e))?
        {
            Some(s) => {
                caller.may_see(s.view.member_id)?;
                Ok(Response::new(to_pb(s)))
            }
            None => Err(Status::not_found(format!(
                "no status for reservation {id} yet; a new reservation appears within moments"
            ))),
        }
    }

    async fn list_reservation_statuses(
        &self,
        request: Request<pb::ListReservationStatusesRequest>,
    ) -> Result<Response<pb::ListReservationStatusesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let member = match caller.list_scope(req.member_id)? {
            0 => None,
            m => Some(positive_id("member_id", m)?),
        };
        let date = if req.reservation_date.is_empty() {
            None
        } else {
            Some(format_day(
                parse_day("reservation_date", &req.reservation_date)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            ))
        };
        let page = Page::from_request(req.page_size, &req.page_token)?;
        let rows = self
            .store
            .list(member, date.as_deref(), page)
            .await
            .map_err(|e| db_status("ListReservationStatuses", e))?;
        let next_page_token = page.next_token(rows.len(), rows.last().map(|v| v.reservation_id));
        Ok(Response::new(pb::ListReservationStatusesResponse {
            statuses: rows
                .into_iter()
                .map(|v| view_to_pb(v, Vec::new()))
                .collect(),
            next_page_token,
        }))
    }

    type WatchReservationStatusStream = WatchStream;

    async fn watch_reservation_status(
        &self,
        request: Request<pb::WatchReservationStatusRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = Caller::of(&request)?;
        let id = positive_id("reservation_id", request.into_inner().reservation_id)?;
        let mut changes = self.changes.subscribe();
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            // What the client last saw: a status is sent again only when it changed.
            let mut sent: Option<(Stage, usize)> = None;
            loop {
                match store.get(id).await {
                    Ok(Some(status)) => {
                        if let Err(denied) = caller.may_see(status.view.member_id) {
                            let _ = tx.send(Err(denied)).await;
                            return;
                        }
                        let seen = (status.view.stage, status.history.len());
                        if sent != Some(seen) {
                            if tx.send(Ok(to_pb(status))).await.is_err() {
                                return;
                            }
                            sent = Some(seen);
                        }
                    }
                    // Not projected yet: wait for it rather than fail a watch opened
                    // right after ReserveTicket.
                    Ok(None) => {}
                    Err(e) => {
                        let _ = tx.send(Err(db_status("WatchReservationStatus", e))).await;
                        return;
                    }
                }
                let poll = tokio::time::sleep(WATCH_POLL);
                tokio::pin!(poll);
                loop {
                    tokio::select! {
                        changed = changes.recv() => match changed {
                            Ok(changed) if changed.contains(&id) => break,
                            Ok(_) => continue,
                            Err(broadcast::error::RecvError::Lagged(_)) => break,
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                        _ = &mut poll => break,
                        _ = tx.closed() => return,
                        // Not the end of the application's story: tell the client to
                        // watch again (another replica answers), not that it is over.
                        _ = shutdown.cancelled() => {
                            // try_send: a client that stopped reading must not hold the
                            // shutdown up; it learns of it from the closed stream then.
                            let _ = tx.try_send(Err(Status::unavailable(
                                "the status service is shutting down; watch again",
                            )));
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
