//! The inbound gRPC adapter: `parking.v1.ParkingLotService`.

use crate::domain::{check_capacity, remaining};
use crate::store::{CapacitySet, Day, Store};
use parking_common::calendar::{format_day, parse_day, Calendar};
use parking_common::grpc::db_status;
use parking_common::identity::{Caller, Role};
use parking_common::pb;
use tonic::{Request, Response, Status};

pub struct Api {
    pub store: Store,
    pub calendar: Calendar,
}

fn to_pb(date: String, day: Day) -> pb::DailyAvailability {
    pb::DailyAvailability {
        date,
        capacity: day.capacity,
        occupied: day.occupied,
        remaining: remaining(day.capacity, day.occupied),
    }
}

#[tonic::async_trait]
impl pb::parking_lot_service_server::ParkingLotService for Api {
    async fn get_daily_availability(
        &self,
        request: Request<pb::GetDailyAvailabilityRequest>,
    ) -> Result<Response<pb::DailyAvailability>, Status> {
        // Any person signed in may look.
        Caller::of(&request)?;
        let date = request.into_inner().date;
        // No date: today's, as `GET /parkingLots` asks.
        let date = if date.is_empty() {
            self.calendar.today()
        } else {
            parse_day("date", &date).map_err(|e| Status::invalid_argument(e.to_string()))?
        };
        let date = format_day(date);
        let day = self
            .store
            .day(&date)
            .await
            .map_err(|e| db_status("GetDailyAvailability", e))?;
        Ok(Response::new(to_pb(date, day)))
    }

    async fn set_daily_capacity(
        &self,
        request: Request<pb::SetDailyCapacityRequest>,
    ) -> Result<Response<pb::DailyAvailability>, Status> {
        Caller::of(&request)?.require(Role::Admin, "SetDailyCapacity")?;
        let req = request.into_inner();
        let day =
            parse_day("date", &req.date).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let today = self.calendar.today();
        if day < today {
            return Err(Status::invalid_argument(format!(
                "date {day} is in the past (today is {today} in {}); capacity can only be set for today or later",
                self.calendar.tz
            )));
        }
        let capacity = check_capacity(req.capacity).map_err(Status::invalid_argument)?;
        let date = format_day(day);
        match self
            .store
            .set_capacity(&date, capacity)
            .await
            .map_err(|e| db_status("SetDailyCapacity", e))?
        {
            CapacitySet::Done(d) => {
                tracing::info!(%date, capacity, "daily capacity set");
                Ok(Response::new(to_pb(date, d)))
            }
            CapacitySet::BelowOccupied(d) => Err(Status::failed_precondition(format!(
                "{} spaces are already occupied on {date}; capacity cannot go below that (asked {capacity})",
                d.occupied
            ))),
        }
    }
}
