"""Answer every round of many conversations: round r of all conversations in one batch (in
chunks of `batch_size`), history accumulating within each conversation, conversations sharded
across ranks and the answers gathered on every rank.

History is the model's own earlier answers (`history="generated"`, as the reference's
batch_generation and a real chat) or the suite's reference answers where it has them
(`history="reference"`, as training's answer-accuracy eval)."""

from __future__ import annotations

from dsvl_exp import collectives
from dsvl_exp.data.conversation import Conversation, Round
from dsvl_exp.inference.generation import GenerationSettings, answer_batch
from dsvl_exp.inference.loading import LoadedModel
from dsvl_exp.inference.suites import EvalConversation

HISTORIES = ("generated", "reference")


def pending_conversation(conversation: EvalConversation, answers: list[str], round_index: int, history: str) -> Conversation:
    """Rounds [0, round_index] as the model sees them before answering round `round_index`."""
    rounds, images = [], []
    for k, item in enumerate(conversation.rounds[: round_index + 1]):
        if k == round_index:
            answer = ""
        elif history == "reference" and item.answer is not None:
            answer = item.answer
        else:
            answer = answers[k]
        rounds.append(Round(question=item.question, answer=answer, num_images=len(item.images)))
        images += item.images
    return Conversation(id=conversation.id, images=tuple(images), rounds=tuple(rounds))


def answer_conversations(loaded: LoadedModel, conversations: list[EvalConversation], settings: GenerationSettings,
                         batch_size: int = 8, history: str = "generated") -> list[list[str]]:
    """The answers of every round of every conversation, in order (this process only)."""
    if history not in HISTORIES:
        raise ValueError(f"history={history!r}: expected one of {HISTORIES}")
    answers: list[list[str]] = [[] for _ in conversations]
    for round_index in range(max((len(c.rounds) for c in conversations), default=0)):
        active = [i for i, c in enumerate(conversations) if len(c.rounds) > round_index]
        for start in range(0, len(active), batch_size):
            chunk = active[start:start + batch_size]
            pending = [pending_conversation(conversations[i], answers[i], round_index, history) for i in chunk]
            outputs = answer_batch(loaded.model, loaded.tokenizer, loaded.template, loaded.images, pending, settings)
            for i, answer in zip(chunk, outputs):
                answers[i].append(answer)
    return answers


def answer_sharded(loaded: LoadedModel, conversations: list[EvalConversation], settings: GenerationSettings,
                   batch_size: int = 8, history: str = "generated") -> list[list[str]]:
    """As `answer_conversations`, each rank taking every world-th conversation; all ranks get all
    answers back in the original order. Every rank holds the whole model: no collective runs
    during generation, so ranks may finish their shards at different times."""
    rank, world = collectives.rank_and_world()
    if world == 1:
        return answer_conversations(loaded, conversations, settings, batch_size, history)
    mine = list(range(rank, len(conversations), world))
    shard = answer_conversations(loaded, [conversations[i] for i in mine], settings, batch_size, history)
    gathered = collectives.all_gather_objects(list(zip(mine, shard)))
    answers: list[list[str]] = [[] for _ in conversations]
    for part in gathered:
        for index, conversation_answers in part:
            answers[index] = conversation_answers
    return answers
