"""parking-mesh's community service: after working hours, local residents book the spaces
the company's employees left empty.

Layout: `domain` (the rules, no I/O), `store` (Redis: dates, bookings, processed events,
outbox), `events` (JetStream: ParkingLot's events in, the community's out), `auth` (token
check), `capacity` (the lot's capacity read through the gateway), `service` (the gRPC API),
`watch` (booking changes to watchers), `metrics`, `config`, `logs` and `app` (wiring).
"""
