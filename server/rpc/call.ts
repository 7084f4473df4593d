/**
 * Per-call state and the handler/interceptor shapes (after connect-es): a unary handler is an
 * async function, a server-streaming handler an async generator, and an interceptor wraps the
 * next step: `(next) => async (req) => next(req)`.
 */
import type { MethodDefinition } from "@grpc/proto-loader";
import type { PromptLearningDefinition } from "../../proto/gen/promptlearning/v1/PromptLearning.ts";

export interface CallContext {
  /** "promptlearning.v1.PromptLearning" */
  service: string;
  /** "Train" */
  method: string;
  /** Aborts when the client cancels, the deadline passes or the server shuts down. */
  signal: AbortSignal;
  /** The client's deadline, if it set one. */
  deadline?: Date;
  /** Request metadata (lower-case keys; text values only). */
  header: ReadonlyMap<string, string>;
  /** "127.0.0.1:54321" */
  peer: string;
}

export interface RpcRequest {
  /** Whether the response is a stream of messages. */
  stream: boolean;
  message: unknown;
  ctx: CallContext;
}

export type RpcResponse =
  | { stream: false; message: unknown }
  | { stream: true; messages: AsyncIterable<unknown> };

export type Next = (req: RpcRequest) => Promise<RpcResponse>;
export type Interceptor = (next: Next) => Next;

type RequestOf<M> = M extends MethodDefinition<infer _I, infer _O, infer RO, infer _OO> ? RO
  : never;
type ResponseOf<M> = M extends MethodDefinition<infer _I, infer O, infer _RO, infer _OO> ? O
  : never;

/** The server-streaming methods of the service (checked against the descriptor at bind time). */
export type StreamingMethod = "Train" | "Evaluate" | "WatchJob" | "InferStream";

type Def = PromptLearningDefinition;

/** The methods of the service (the descriptor's known keys, without its index signature). */
export type MethodName = keyof {
  [K in keyof Def as string extends K ? never : number extends K ? never : K]: K;
};

/** Handlers typed from the generated service descriptor. */
export type ServiceImpl = {
  [K in MethodName]: K extends StreamingMethod
    ? (req: RequestOf<Def[K]>, ctx: CallContext) => AsyncIterable<ResponseOf<Def[K]>>
    : (req: RequestOf<Def[K]>, ctx: CallContext) => Promise<ResponseOf<Def[K]>>;
};

/** Applies interceptors so that the first in the list runs first (outermost). */
export function applyInterceptors(next: Next, interceptors: readonly Interceptor[]): Next {
  return interceptors.reduceRight((n, i) => i(n), next);
}
