/** The serving path raises the service's own errors (`../errors.ts`); re-exported for its modules. */
export { cancelled, invalidArgument, resourceExhausted, ServiceError } from "../errors.ts";
