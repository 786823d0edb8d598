-- Run once, when the data directory is first initialised: one database per service,
-- owned by POSTGRES_USER (each service migrates its own schema at start).
CREATE DATABASE reservation;
CREATE DATABASE parking_lot;
CREATE DATABASE delivery;
CREATE DATABASE status;
