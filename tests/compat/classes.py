from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import List, Optional, Dict


class Shape(ABC):
    @abstractmethod
    def area(self) -> float: ...

    def describe(self) -> str:
        return f"{type(self).__name__} with area {self.area():.2f}"


class Rect(Shape):
    def __init__(self, w, h):
        self.w, self.h = w, h

    def area(self):
        return self.w * self.h


class Square(Rect):
    def __init__(self, side):
        super().__init__(side, side)

    def __repr__(self):
        return "Square(%d)" % self.w


class Color(Enum):
    RED = auto()
    GREEN = auto()


@dataclass(order=True)
class Item:
    priority: int
    name: str = field(compare=False)
    tags: List[str] = field(default_factory=list)


def main(x):
    shapes = [Rect(2, 3), Square(4)]
    items = sorted([Item(3, "c"), Item(1, "a", ["t"]), Item(2, "b")])
    opt: Optional[Dict[str, int]] = {"k": 1}
    return {
        "describe": [s.describe() for s in shapes],
        "repr": repr(shapes[1]),
        "mro": [c.__name__ for c in Square.__mro__],
        "isinstance": isinstance(shapes[1], Shape),
        "enum": [c.name for c in Color] + [Color.GREEN.value],
        "items": [(i.priority, i.name, i.tags) for i in items],
        "opt": opt,
    }
