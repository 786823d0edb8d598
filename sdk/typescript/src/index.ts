// @parking-mesh/sdk: the parking.v1 contract's messages and services (generated into
// ./gen by `npm run generate`), and what every caller of the gateway needs around them.
export { CONTRACT_VERSION } from "./version.js";
export { TokenSource, TokenError, type Grant, type TokenSourceOptions } from "./token.js";
export { createGatewayTransport, bearerToken, type GatewayTransportOptions } from "./transport.js";
export { createParkingClients, type ParkingClients } from "./clients.js";
export * from "./errors.js";

export * from "./gen/parking/v1/reservation_pb.js";
export * from "./gen/parking/v1/parking_lot_pb.js";
export * from "./gen/parking/v1/delivery_pb.js";
export * from "./gen/parking/v1/status_pb.js";
export * from "./gen/parking/v1/community_pb.js";
export * from "./gen/parking/v1/events_pb.js";
