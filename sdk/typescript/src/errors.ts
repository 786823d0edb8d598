// The gateway and the services answer with gRPC status codes (see DESIGN.md, Contract);
// these name the ones a caller acts on. Anything thrown by a client call can be passed in.
import { Code, ConnectError } from "@connectrpc/connect";

/** The status code of an error thrown by a client call (Unknown for anything else). */
export function codeOf(error: unknown): Code {
  return ConnectError.from(error).code;
}

/** A member already holds a ticket for that day (one ticket per member per day). */
export const isAlreadyExists = (error: unknown): boolean => codeOf(error) === Code.AlreadyExists;
/** A bad date or id; the message says which. */
export const isInvalidArgument = (error: unknown): boolean => codeOf(error) === Code.InvalidArgument;
export const isNotFound = (error: unknown): boolean => codeOf(error) === Code.NotFound;
/** E.g. cancelling a cancelled reservation. */
export const isFailedPrecondition = (error: unknown): boolean => codeOf(error) === Code.FailedPrecondition;
/** No token, or one the service could not verify: get a new token. */
export const isUnauthenticated = (error: unknown): boolean => codeOf(error) === Code.Unauthenticated;
/** The caller's role may not do this (e.g. a resident reading reservations). */
export const isPermissionDenied = (error: unknown): boolean => codeOf(error) === Code.PermissionDenied;
/** A backend is down or its circuit is open: retry later. */
export const isUnavailable = (error: unknown): boolean => codeOf(error) === Code.Unavailable;

export { Code, ConnectError };
