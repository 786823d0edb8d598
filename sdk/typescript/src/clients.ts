// One typed client per parking.v1 service, all over the same transport.
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { CommunityParkingService } from "./gen/parking/v1/community_pb.js";
import { TicketDeliveryService } from "./gen/parking/v1/delivery_pb.js";
import { ParkingLotService } from "./gen/parking/v1/parking_lot_pb.js";
import { TicketReservationService } from "./gen/parking/v1/reservation_pb.js";
import { ReservationStatusService } from "./gen/parking/v1/status_pb.js";

export interface ParkingClients {
  reservations: Client<typeof TicketReservationService>;
  parkingLot: Client<typeof ParkingLotService>;
  deliveries: Client<typeof TicketDeliveryService>;
  status: Client<typeof ReservationStatusService>;
  community: Client<typeof CommunityParkingService>;
}

export function createParkingClients(transport: Transport): ParkingClients {
  return {
    reservations: createClient(TicketReservationService, transport),
    parkingLot: createClient(ParkingLotService, transport),
    deliveries: createClient(TicketDeliveryService, transport),
    status: createClient(ReservationStatusService, transport),
    community: createClient(CommunityParkingService, transport),
  };
}
